"""replay_overshooting: stochastic latent dynamics learned with a differentiable extended Kalman filter and
replay overshooting (Li, Wu & Kennedy, ICRA 2021).

The parts, each taught by a notebook in `nbs/`:

- `protocols`: what the filter asks of a model, and the result types (00c);
- `backends`: which implementation runs, `backend="reference"`, `"fused"`, `"native"` or `"auto"` (00b);
- `gaussian`, `ekf`, `continuous`: Gaussian helpers, the batched EKF, RTS smoother and predictor, and the
  continuous-time time update (01, 02);
- `models`, `objectives`: `EKFModel` (discrete, continuous or ensemble dynamics) and the training objectives
  `vro`, `sro`, `lro`, `none` and `s_ekf` (03, 04);
- `data`: `load_dataset` for Van der Pol, the pendulum (vectors or images), MIT Push and its simulated stand-in (05);
- `image_models`, `baselines`: the image EKF, PlaNet's RSSM and GSSM (06, 07);
- `training`, `evaluation`, `reproduce`: `get_experiment` and `train` for the paper's registered experiments,
  `evaluate` for NLL and MAE forecasts, and the paper's comparisons rerun into `results/` (08, 09, 12).

A first run:

    from replay_overshooting import get_experiment, train, evaluate
    result = train(get_experiment("sro_example", max_iterations=300))
    print(evaluate(result.run_dir))
"""
__version__ = "0.1.0"

from . import native  # registers the C++ loops with `backends`, for the "native" and "auto" backends
from .data import load_dataset
from .evaluation import evaluate
from .models import EKFModel
from .protocols import Forecast
from .objectives import get_objective
from .training import EXPERIMENTS, get_experiment, load_run, train

__all__ = ["EKFModel", "Forecast", "EXPERIMENTS", "evaluate", "get_experiment", "get_objective", "load_dataset",
           "load_run", "train"]
