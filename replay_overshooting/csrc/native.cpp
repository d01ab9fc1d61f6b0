// The extension's one translation unit: every part, and the Python bindings of its entry points (03a).
#include "flow.h"
#include "filter.h"
#include "rollout.h"
#include "rts.h"
#include "rssm.h"
#include "gssm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<FilterTape, std::shared_ptr<FilterTape>>(m, "FilterTape");
  pybind11::class_<RolloutTape, std::shared_ptr<RolloutTape>>(m, "RolloutTape");
  m.def("filter_forward", &filter_forward);
  m.def("filter_backward", &filter_backward);
  m.def("rollout_forward", &rollout_forward);
  m.def("rollout_backward", &rollout_backward);
  pybind11::class_<RTSTape, std::shared_ptr<RTSTape>>(m, "RTSTape");
  m.def("rts_forward", &rts_forward);
  m.def("rts_backward", &rts_backward);
  pybind11::class_<MLPTape, std::shared_ptr<MLPTape>>(m, "MLPTape");
  m.def("value_and_jacobian_forward", &value_and_jacobian_forward);
  m.def("value_and_jacobian_backward", &value_and_jacobian_backward);
  pybind11::class_<TimeUpdateTape, std::shared_ptr<TimeUpdateTape>>(m, "TimeUpdateTape");
  m.def("time_update_forward", &time_update_forward);
  m.def("time_update_backward", &time_update_backward_node);
  pybind11::class_<BeliefFlowTape, std::shared_ptr<BeliefFlowTape>>(m, "BeliefFlowTape");
  m.def("belief_flow_forward", &belief_flow_forward);
  m.def("belief_flow_backward", &belief_flow_backward);
  pybind11::class_<RSSMTape, std::shared_ptr<RSSMTape>>(m, "RSSMTape");
  m.def("rssm_posterior_forward", &rssm_posterior_forward);
  m.def("rssm_posterior_backward", &rssm_posterior_backward);
  pybind11::class_<GRUTape, std::shared_ptr<GRUTape>>(m, "GRUTape");
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  pybind11::class_<GSSMTape, std::shared_ptr<GSSMTape>>(m, "GSSMTape");
  m.def("gssm_posterior_forward", &gssm_posterior_forward);
  m.def("gssm_posterior_backward", &gssm_posterior_backward);
  m.def("tiled_matmul", &tiled_matmul);
  m.def("small_cholesky_ex", &small_cholesky_ex);
  m.def("small_cholesky_solve", &small_cholesky_solve);
  m.def("softplus_with_slope", &softplus_with_slope);
  m.def("gaussian_kl", &gaussian_kl);
  m.def("gaussian_kl_backward", &gaussian_kl_backward);
  m.def("gaussian_log_density", &gaussian_log_density);
  m.def("gaussian_log_density_backward", &gaussian_log_density_backward);
  m.attr("loop_state_limit") = kLoopStateLimit;
  m.def("observation_covariance", &observation_covariance);
  m.def("observation_covariance_backward", &observation_covariance_backward);
}
