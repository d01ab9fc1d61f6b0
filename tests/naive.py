"""Deliberately simple per-sample reference implementations (explicit loops, inverses, torch.distributions)
that the tests compare the library against."""
import torch
from torch.autograd.functional import jacobian

F64 = dict(dtype=torch.float64)


def naive_filter(dynamics, observe, y, u, mu0, P0, Q, R):
    "Per-sample EKF with explicit inverses and the short covariance update: a deliberately simple reference."
    B, T, _ = y.shape
    out_means, out_covs, out_pred_means, out_pred_covs, out_ll = [], [], [], [], []
    for b in range(B):
        mean, cov = mu0.clone(), P0.clone()
        fm, fc, pm, pc, ll = [], [], [], [], []
        for t in range(T):
            pm.append(mean), pc.append(cov)
            C = jacobian(lambda z: observe(z[None])[0], mean)
            y_pred = observe(mean[None])[0]
            S = C @ cov @ C.T + R
            K = cov @ C.T @ torch.linalg.inv(S)
            resid = y[b, t] - y_pred
            ll.append(torch.distributions.MultivariateNormal(y_pred, S).log_prob(y[b, t]))
            mean = mean + K @ resid
            cov = (torch.eye(len(mean), **F64) - K @ C) @ cov
            fm.append(mean), fc.append(cov)
            if t < T - 1:
                A = jacobian(lambda z: dynamics(z[None], u[b, t][None])[0], mean)
                mean = dynamics(mean[None], u[b, t][None])[0]
                cov = A @ cov @ A.T + Q
        out_means.append(torch.stack(fm)), out_covs.append(torch.stack(fc))
        out_pred_means.append(torch.stack(pm)), out_pred_covs.append(torch.stack(pc)), out_ll.append(torch.stack(ll))
    return tuple(torch.stack(x) for x in (out_means, out_covs, out_pred_means, out_pred_covs, out_ll))


def naive_smoother(dynamics, fm, fc, pm, pc, u):
    B, T, n = fm.shape
    sm, sc = fm.clone(), fc.clone()
    for b in range(B):
        for t in range(T - 2, -1, -1):
            A = jacobian(lambda z: dynamics(z[None], u[b, t][None])[0], fm[b, t])
            G = fc[b, t] @ A.T @ torch.linalg.inv(pc[b, t + 1])
            sm[b, t] = fm[b, t] + G @ (sm[b, t + 1] - pm[b, t + 1])
            sc[b, t] = fc[b, t] + G @ (sc[b, t + 1] - pc[b, t + 1]) @ G.T
    return sm, sc


def naive_objective_terms(model, y, u):
    "Per-(b, t) terms of every objective for an EKFModel, by explicit loops and torch.distributions."
    dyn, obs = model.dynamics, model.observation
    mu0, P0, Q, R = model.initial_mean, model.initial_cov(), model.dynamics_cov(), model.obs_cov()
    fm, fc, pm, pc, one_step = naive_filter(dyn, obs, y, u, mu0, P0, Q, R)
    sm, sc = naive_smoother(dyn, fm, fc, pm, pc, u)
    B, T, _ = y.shape
    MVN = torch.distributions.MultivariateNormal

    def obs_dist(mean, cov):
        C = jacobian(lambda z: obs(z[None])[0], mean)
        return MVN(obs(mean[None])[0], C @ cov @ C.T + R)

    terms = {k: torch.zeros(B, T, **F64) for k in ("smooth", "replay", "latent_replay", "kl")}
    for b in range(B):
        mean, cov = sm[b, 0], sc[b, 0]
        for t in range(T):
            terms["smooth"][b, t] = obs_dist(sm[b, t], sc[b, t]).log_prob(y[b, t])
            terms["replay"][b, t] = obs_dist(mean, cov).log_prob(y[b, t])
            terms["latent_replay"][b, t] = MVN(mean, cov).log_prob(sm[b, t])
            if t == 0:
                prior = MVN(mu0, P0)
            else:
                A = jacobian(lambda z: dyn(z[None], u[b, t - 1][None])[0], sm[b, t - 1])
                prior = MVN(dyn(sm[b, t - 1][None], u[b, t - 1][None])[0], A @ sc[b, t - 1] @ A.T + Q)
            terms["kl"][b, t] = torch.distributions.kl_divergence(MVN(sm[b, t], sc[b, t]), prior)
            A = jacobian(lambda z: dyn(z[None], u[b, t][None])[0], mean)
            mean, cov = dyn(mean[None], u[b, t][None])[0], A @ cov @ A.T + Q
    terms["one_step"] = one_step
    return terms
