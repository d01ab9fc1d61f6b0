"""Integration and failure checks of the datasets: load_dataset, windows, the cache, the MIT Push loader and push_sim."""
import math
import os

import h5py
import numpy as np
import pytest
import torch

import replay_overshooting.data as data
from replay_overshooting.data import DATASET_NAMES, SequenceDataset, cache_key, cache_path, load_dataset, save_cache
from replay_overshooting.push import (
    KLOSS_FILES, MIT_PUSH_URL, OBJECT_XZ_MEAN, OBJECT_XZ_STD, PUSHER_XZ_MEAN, PUSHER_XZ_STD)
from replay_overshooting.push_sim import write_push_sim
from replay_overshooting.storage import DATA_ENV_VAR, DatasetFormatError, DatasetNotFoundError

TINY = dict(num_sequences=4, seq_len=25, cache=False)


# ---------------------------------------------------------------- entry point and shapes

def test_unknown_name_option_and_split_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: vdp, pendulum, pendulum_xy, pendulum_images, mit_push, push_sim"):
        load_dataset("acrobot")
    with pytest.raises(ValueError, match=r"unknown option\(s\) colour for dataset 'pendulum'; valid options: num_sequences"):
        load_dataset("pendulum", colour="red")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_dataset("vdp", "val", **TINY)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        load_dataset("vdp", num_sequences=2, seq_len=1, cache=False)
    with pytest.raises(ValueError, match="unknown scheme"):
        load_dataset("vdp", num_sequences=2, scheme="rk4", cache=False)


@pytest.mark.parametrize("name, obs_shape, ctrl_dim, window", [
    ("vdp", (2,), 0, 21), ("pendulum", (2,), 1, 25), ("pendulum_xy", (2,), 1, 25), ("pendulum_images", (16, 16), 1, 25),
])
def test_generated_shapes_and_metadata(name, obs_shape, ctrl_dim, window):
    ds = load_dataset(name, "test", **TINY)
    assert isinstance(ds, SequenceDataset) and len(ds) == 4
    assert ds.y.shape == (4, 25, *obs_shape) and ds.obs_shape == obs_shape
    assert ds.u.shape == (4, 25, ctrl_dim) and ds.ctrl_dim == ctrl_dim
    assert ds.states.shape == (4, 25, 2)
    assert ds.dt == 0.05 and ds.window_length == window and ds.split == "test" and ds.name == name
    assert torch.allclose(ds.t, 0.05 * torch.arange(25.0))
    if name == "pendulum_images":
        assert ds.y.dtype == torch.uint8 and ds.obs_dim is None and ds.normalization["image_levels"] == 256
    else:
        assert ds.y.dtype == torch.float32 and ds.obs_dim == obs_shape[0]
        assert torch.equal(ds.normalization["y_std"], torch.ones(obs_shape))
    item = ds[1]
    assert torch.equal(item["y"], ds.y[1]) and torch.equal(item["u"], ds.u[1]) and torch.equal(item["state"], ds.states[1])


def test_paper_defaults():
    assert data.dataset_options("pendulum_images")["seq_len"] == 101
    assert data.dataset_options("vdp")["seq_len"] == 61
    assert data.dataset_options("mit_push")["seq_len"] == 50
    assert data.dataset_options("mit_push")["num_eval"] == 20
    assert set(DATASET_NAMES) == {"vdp", "pendulum", "pendulum_xy", "pendulum_images", "mit_push", "push_sim"}


def test_seeds_and_splits_give_reproducible_distinct_data():
    a = load_dataset("pendulum", **TINY)
    b = load_dataset("pendulum", **TINY)
    assert torch.equal(a.y, b.y) and torch.equal(a.u, b.u)
    assert not torch.equal(load_dataset("pendulum", "test", **TINY).states, a.states)
    assert not torch.equal(load_dataset("pendulum", **TINY, seed=1).states, a.states)


def test_pendulum_observations_follow_the_states():
    pend = load_dataset("pendulum", num_sequences=64, seq_len=30, cache=False)
    angle_error = torch.atan2(torch.sin(pend.y[..., 0] - pend.states[..., 0]), torch.cos(pend.y[..., 0] - pend.states[..., 0]))
    assert abs(angle_error.std().item() - 0.01) < 1e-3
    assert abs((pend.y[..., 1] - pend.states[..., 1]).std().item() - 0.01) < 1e-3
    assert pend.states[..., 0].abs().max() <= math.pi and pend.y[..., 0].abs().max() <= math.pi
    xy = load_dataset("pendulum_xy", num_sequences=64, seq_len=30, with_velocity=True, obs_noise_var=0.0, cache=False)
    theta, omega = xy.states[..., 0], xy.states[..., 1]
    expected = torch.stack([theta.sin(), -theta.cos(), omega * theta.cos(), omega * theta.sin()], -1)
    assert torch.allclose(xy.y, expected, atol=1e-6) and xy.obs_dim == 4


def test_pendulum_torques_are_piecewise_constant_with_half_zero():
    u = load_dataset("pendulum", num_sequences=6, seq_len=101, cache=False).u[..., 0]
    pieces = u[:, :100].reshape(6, 20, 5)
    assert torch.equal(pieces, pieces[..., :1].expand_as(pieces))
    assert torch.equal(u[:, 100], u[:, 99])
    assert ((pieces[..., 0] == 0).sum(1) == 10).all()
    limits = torch.tensor([10.0, 0.5, 4.0, 10.0, 0.5, 4.0])
    assert (pieces[..., 0].abs() <= limits[:, None]).all() and (pieces[0].abs().max() > 4.0)


def test_rendered_frames_have_their_darkest_pixel_at_the_bob():
    images = load_dataset("pendulum_images", num_sequences=5, seq_len=20, image_noise=0.0, cache=False)
    theta = images.states[..., 0].double()
    spacing = 4 / 15
    row = torch.round((2 + torch.cos(theta)) / spacing).long()
    col = torch.round((2 + torch.sin(theta)) / spacing).long()
    frames = images.y.reshape(5, 20, 256)
    at_bob = images.y[torch.arange(5)[:, None], torch.arange(20), row, col]
    assert torch.equal(at_bob, frames.amin(-1))  # darkest (ties: two pixels equally near the bob)
    assert ((frames <= frames.amin(-1, keepdim=True)).sum(-1) <= 2).all()
    nearest_bound = 255 * (spacing / math.sqrt(2)) / (0.6 + spacing / 2)  # bob at a pixel corner: 65.6
    assert (at_bob <= nearest_bound).all() and (frames.amax(-1) == 255).all()


def test_van_der_pol_limit_cycle_amplitude_is_two():
    vdp = load_dataset("vdp", num_sequences=4, seq_len=601, process_noise=0.0, obs_noise_var=0.0, cache=False)
    amplitude = vdp.y[:, -140:, 0].abs().amax(1)
    assert torch.allclose(amplitude, torch.full((4,), 2.0086), atol=0.01)


# ---------------------------------------------------------------- windows and batches

def test_windows_match_a_naive_slice_of_each_sequence():
    ds = load_dataset("pendulum", **TINY)
    w = ds.windows(7, generator=torch.Generator().manual_seed(3))
    assert w["y"].shape == (4, 7, 2) and w["u"].shape == (4, 7, 1) and w["state"].shape == (4, 7, 2)
    for i in range(4):
        s = int(w["start"][i])
        assert 0 <= s <= 25 - 7
        assert torch.equal(w["y"][i], ds.y[i, s:s + 7])
        assert torch.equal(w["u"][i], ds.u[i, s:s + 7])
        assert torch.equal(w["state"][i], ds.states[i, s:s + 7])
    again = ds.windows(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["start"], w["start"])
    assert ds.windows(generator=torch.Generator().manual_seed(0))["y"].shape == (4, ds.window_length, 2)


def test_image_batches_are_float_and_cover_every_sequence_once():
    ds = load_dataset("pendulum_images", num_sequences=10, seq_len=12, cache=False)
    assert ds.windows(5)["y"].dtype == torch.uint8
    seen = []
    for batch in ds.batches(4, 5, generator=torch.Generator().manual_seed(0)):
        assert batch["y"].dtype == torch.float32 and batch["y"].shape[1:] == (5, 16, 16)
        for b in range(len(batch["start"])):
            matches = [i for i in range(10) if torch.equal(ds.states[i, batch["start"][b]:batch["start"][b] + 5], batch["state"][b])]
            assert len(matches) == 1
            i = matches[0]
            s = int(batch["start"][b])
            assert torch.equal(batch["y"][b], ds.y[i, s:s + 5].float() / 255)
            seen.append(i)
    assert sorted(seen) == list(range(10))
    assert [len(b["y"]) for b in ds.batches(4, 5, drop_last=True)] == [4, 4]


# ---------------------------------------------------------------- the cache

def test_cache_round_trips_exactly_and_is_reused(tmp_path, monkeypatch):
    first = load_dataset("pendulum_images", "test", tmp_path, num_sequences=3, seq_len=15)
    files = list(tmp_path.glob("pendulum_images-test-*.h5"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "simulate_pendulum", fail)
    second = load_dataset("pendulum_images", "test", tmp_path, num_sequences=3, seq_len=15)
    for key in ("y", "u", "states"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert second.y.dtype == torch.uint8
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_dataset("pendulum_images", "test", tmp_path, num_sequences=3, seq_len=15, friction=0.2)


def test_changed_parameters_do_not_use_the_cache(tmp_path):
    base = load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)
    for change in [dict(seed=1), dict(mu=2.0), dict(seq_len=11), dict(obs_noise_var=0.0)]:
        options = dict(num_sequences=3, seq_len=10) | change
        changed = load_dataset("vdp", data_dir=tmp_path, **options)
        assert changed.y.shape != base.y.shape or not torch.equal(changed.y, base.y)
    assert len(list(tmp_path.glob("vdp-train-*.h5"))) == 5
    test = load_dataset("vdp", "test", tmp_path, num_sequences=3, seq_len=10)
    assert not torch.equal(test.y, base.y)


def test_environment_variable_sets_the_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    load_dataset("vdp", num_sequences=2, seq_len=5)
    assert len(list(tmp_path.glob("vdp-train-*.h5"))) == 1


def test_interrupted_generation_leaves_no_cache_file(tmp_path, monkeypatch):
    original = h5py.Group.create_dataset
    calls = []

    def interrupt_second_write(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupt_second_write)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)
    assert [p.suffix for p in tmp_path.iterdir()] == [".h5"]


def test_corrupt_cache_files_raise_errors_naming_them(tmp_path):
    load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)
    (path,) = tmp_path.glob("vdp-train-*.h5")
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(DatasetFormatError, match=str(path.name)):
        load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)


def test_non_finite_or_misshapen_cache_arrays_raise(tmp_path):
    options = dict(num_sequences=3, seq_len=10, dt=0.05, substeps=5, scheme="heun", mu=1.0, process_noise=0.05,
                   obs_noise_var=1e-4, seed=0)
    key = cache_key("vdp", "train", options)
    path = cache_path(tmp_path, key, "vdp", "train")
    y = torch.zeros(3, 10, 2)
    y[1, 4, 0] = float("nan")
    save_cache(path, key, {"y": y, "u": torch.zeros(3, 10, 0), "states": torch.zeros(3, 10, 2)})
    with pytest.raises(DatasetFormatError, match=r"'y' of cache file .*NaN"):
        load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)
    save_cache(path, key, {"y": torch.zeros(3, 10, 3), "u": torch.zeros(3, 10, 0), "states": torch.zeros(3, 10, 2)})
    with pytest.raises(DatasetFormatError, match=r"has shape \(3, 10, 3\), expected \(3, 10, 2\)"):
        load_dataset("vdp", data_dir=tmp_path, num_sequences=3, seq_len=10)


# ---------------------------------------------------------------- MIT Push files written by hand

MO, SO = np.array(OBJECT_XZ_MEAN), np.array(OBJECT_XZ_STD)
MQ, SQ = np.array(PUSHER_XZ_MEAN), np.array(PUSHER_XZ_STD)
MATERIAL_CYCLE = ["pu", "abs", "plywood", "delrin"]


def kloss_trajectory(g, steps):
    "Trajectory number g: whitened object (g + k, −k), whitened pusher (k², g), contact k % 2."
    k = np.arange(steps, dtype=np.float64)
    obj = np.stack([MO[0] + SO[0] * (g + k), np.full(steps, 0.7), MO[1] - SO[1] * k], -1)
    tip = np.stack([MQ[0] + SQ[0] * k**2, np.full(steps, 0.3), MQ[1] + SQ[1] * g * np.ones(steps)], -1)
    return {"pos": obj, "tip": tip, "contact": (k % 2).astype(np.float32), "force": np.zeros((steps, 3)),
            "contact_point": np.zeros((steps, 3)), "normal": np.zeros((steps, 2)),
            "image": np.zeros((steps, 32, 32, 3), np.float32),
            "material": np.bytes_(MATERIAL_CYCLE[g % 4] + "\x00\x00")}


def write_kloss(directory, per_file=4, steps=lambda g: 6 if g % 2 else 8, edit=None):
    "Seven files of `per_file` trajectories; `edit(file_index, j, trajectory)` may change one before writing."
    directory.mkdir(parents=True, exist_ok=True)
    for f, name in enumerate(KLOSS_FILES):
        with h5py.File(directory / name, "w") as file:
            for j in range(per_file):
                g = f * per_file + j
                trajectory = kloss_trajectory(g, steps(g))
                if edit is not None:
                    edit(f, j, trajectory)
                group = file.create_group(f"trajectory{j}")
                for key, value in trajectory.items():
                    group[key] = value


def test_mit_push_whitening_and_controls_by_hand(tmp_path):
    write_kloss(tmp_path)
    train = load_dataset("mit_push", data_dir=tmp_path, seq_len=6, num_eval=5)
    test = load_dataset("mit_push", "test", data_dir=tmp_path, seq_len=6, num_eval=5)
    assert len(train) == 23 and len(test) == 5
    assert train.y.shape == (23, 6, 2) and train.u.shape == (23, 6, 6) and train.states is None
    assert train.dt == 0.01 and train.window_length == 6 and "MIT Push" in train.source
    k = torch.arange(6.0)
    for ds, offset in [(train, 0), (test, 23)]:
        for i in range(len(ds)):
            g = i + offset
            assert torch.allclose(ds.y[i], torch.stack([g + k, -k], -1), atol=1e-5)
            move_x = 2 * k + 1
            if g % 2:  # 6 steps in the file: the last move is 0
                move_x[-1] = 0.0
            expected_u = torch.stack([k**2, torch.full((6,), float(g)), move_x, torch.zeros(6),
                                      1 - k % 2, k % 2], -1)
            assert torch.allclose(ds.u[i], expected_u, atol=1e-5), (g, ds.u[i])


def test_mit_push_normalization_maps_back_to_metres(tmp_path):
    write_kloss(tmp_path)
    ds = load_dataset("mit_push", data_dir=tmp_path, seq_len=6, num_eval=5)
    norm = ds.normalization
    raw_object = ds.y[0].double() * norm["y_std"].double() + norm["y_mean"].double()
    expected = kloss_trajectory(0, 8)["pos"][:6][:, [0, 2]]
    assert torch.allclose(raw_object, torch.from_numpy(expected), atol=1e-8)
    raw_u = ds.u[0].double() * norm["u_std"].double() + norm["u_mean"].double()
    tip = torch.from_numpy(kloss_trajectory(0, 8)["tip"][:, [0, 2]])
    assert torch.allclose(raw_u[:, :2], tip[:6], atol=1e-8)
    assert torch.allclose(raw_u[:, 2:4], tip[1:7] - tip[:6], atol=1e-8)


def test_material_filter_and_subdirectory_and_env_var(tmp_path, monkeypatch):
    write_kloss(tmp_path / "mit_push")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    ds = load_dataset("mit_push", materials=("abs", "delrin"), seq_len=6, num_eval=4)
    test = load_dataset("mit_push", "test", materials=("abs", "delrin"), seq_len=6, num_eval=4)
    assert len(ds) + len(test) == 14
    assert torch.allclose(test.y[:, 0, 0], torch.tensor([21.0, 23.0, 25.0, 27.0]))
    with pytest.raises(ValueError, match="subset of"):
        load_dataset("mit_push", materials=("granite",))
    with pytest.raises(DatasetFormatError, match="not more than the 20 held out"):
        load_dataset("mit_push", materials=("pu",), seq_len=6)


def test_missing_files_raise_a_helpful_file_not_found_error(tmp_path, monkeypatch):
    write_kloss(tmp_path)
    (tmp_path / "kloss_val.hdf5").unlink()
    (tmp_path / "kloss_train2.hdf5").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("mit_push", data_dir=tmp_path)
    assert isinstance(caught.value, DatasetNotFoundError)
    message = str(caught.value)
    assert f"missing in {tmp_path}: kloss_train2.hdf5, kloss_val.hdf5" in message
    assert str(tmp_path / "mit_push") in message
    for needle in [DATA_ENV_VAR, MIT_PUSH_URL, "Kloss", "load_dataset('push_sim')", "write_push_sim(directory)"]:
        assert needle in message
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="from the environment variable REPLAY_OVERSHOOTING_DATA"):
        load_dataset("mit_push")


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    write_kloss(tmp_path)
    (tmp_path / "kloss_train3.hdf5").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DatasetFormatError, match="kloss_train3.hdf5 is not a readable HDF5 file"):
        load_dataset("mit_push", data_dir=tmp_path, seq_len=6)
    write_kloss(tmp_path)
    path = tmp_path / "kloss_train1.hdf5"
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(DatasetFormatError, match="kloss_train1.hdf5"):
        load_dataset("mit_push", data_dir=tmp_path, seq_len=6)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("tip"), r"trajectory2 of .*kloss_train4.hdf5 has no dataset 'tip'"),
    (lambda t: t.update(pos=t["pos"][:, :2]), r"'pos' of trajectory2 of .*kloss_train4.hdf5 has shape \(\d, 2\), expected \(any, 3\)"),
    (lambda t: t.update(tip=t["tip"][:-1]), r"'tip' of trajectory2 of .*kloss_train4.hdf5 has shape"),
    (lambda t: t["pos"].__setitem__((3, 0), np.nan), r"'pos' of trajectory2 of .*kloss_train4.hdf5 holds NaN or infinite values \(first at index 3"),
    (lambda t: t["tip"].__setitem__((1, 2), np.inf), r"'tip' of trajectory2 of .*kloss_train4.hdf5 holds NaN or infinite"),
    (lambda t: t.update(contact=t["contact"] * 2), r"'contact' of trajectory2 of .*kloss_train4.hdf5 holds values other than 0 and 1"),
    (lambda t: t.update(material=np.bytes_("marble")), r"'material' of trajectory2 of .*kloss_train4.hdf5 is 'marble'"),
    (lambda t: t.pop("material"), r"trajectory2 of .*kloss_train4.hdf5 has no string 'material'"),
    (lambda t: t.update(pos=t["pos"][:4], tip=t["tip"][:4], contact=t["contact"][:4]), r"trajectory2 of .*kloss_train4.hdf5 has 4 steps, fewer than seq_len=6"),
])
def test_bad_trajectories_name_file_trajectory_and_key(tmp_path, edit, message):
    def break_one(f, j, trajectory):
        if (f, j) == (4, 2):
            edit(trajectory)

    write_kloss(tmp_path, edit=break_one)
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset("mit_push", data_dir=tmp_path, seq_len=6)


# ---------------------------------------------------------------- push_sim

def test_push_sim_files_load_through_the_mit_push_loader(tmp_path, monkeypatch):
    written = tmp_path / "written"
    write_push_sim(written, num_trajectories=30, num_steps=50, seed=2)
    as_mit = load_dataset("mit_push", data_dir=written)
    as_sim = load_dataset("push_sim", data_dir=tmp_path / "cache", num_trajectories=30, seed=2)
    assert torch.equal(as_mit.y, as_sim.y) and torch.equal(as_mit.u, as_sim.u)
    assert len(as_sim) == 10 and as_sim.y.shape == (10, 50, 2) and as_sim.u.shape == (10, 50, 6)
    assert "SIMULATED" in as_sim.source and "MIT Push dataset" in as_mit.source
    assert torch.equal(as_sim.u[..., 4] + as_sim.u[..., 5], torch.ones(10, 50))
    assert torch.equal(as_sim.u[:, -1, 2:4], torch.zeros(10, 2))
    with h5py.File(written / "kloss_train0.hdf5", "r") as file:
        group = file["trajectory0"]
        shapes = {key: group[key].shape for key in group}
    assert shapes == {"pos": (50, 3), "tip": (50, 3), "force": (50, 3), "contact": (50,), "contact_point": (50, 3),
                      "normal": (50, 2), "image": (50, 32, 32, 3), "material": ()}

    def fail(*args, **kwargs):
        raise AssertionError("push_sim files should have been reused")

    monkeypatch.setattr(data, "write_push_sim", fail)
    again = load_dataset("push_sim", "test", data_dir=tmp_path / "cache", num_trajectories=30, seed=2)
    assert len(again) == 20
    with pytest.raises(AssertionError, match="reused"):
        load_dataset("push_sim", data_dir=tmp_path / "cache", num_trajectories=30, seed=3)
