"""The registered experiments build the paper's models: their parameter counts are the published ones."""
import pytest

from replay_overshooting.image_models import ImageEKFModel
from replay_overshooting.models import EKFModel
from replay_overshooting.training import EXPERIMENTS

# Li, Wu & Kennedy, ICRA 2021, Sec. V: the DT-EKF on push and the pendulum image EKF's latent model
PUBLISHED_COUNTS = {"dt_ekf_push": 23_126, "dt_ekf_kvae_pend_img": 21_726}


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def latent_model(name):
    "The EKF of a registered experiment, sized for its data (push: p = 2, m = 6; pendulum images: m = 1)."
    config = EXPERIMENTS[name]
    options = dict(config.model_options)
    if config.model == "image_ekf":
        return ImageEKFModel(image_size=16, ctrl_dim=1, **options).ekf
    return EKFModel(options.pop("latent_dim"), 2, 6, **options)


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_registered_models_have_the_published_parameter_counts(name):
    for variant in (name, f"sro_{name}", f"s_ekf_{name}"):
        assert count(latent_model(variant)) == PUBLISHED_COUNTS[name], variant


def test_the_registered_experiments_use_the_exact_filter():
    "The paper code's covariance regulariser is an option, off in every registered experiment."
    for name, config in EXPERIMENTS.items():
        assert config.model_options.get("cov_regularizer", 0.0) == 0.0, name
