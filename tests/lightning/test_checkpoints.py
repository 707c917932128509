"""Lightning checkpoints: they hold Lion's state, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from lion_integrations import Lion  # noqa: E402
from lion_integrations.lightning import LionCallback  # noqa: E402
from tests.helpers.lightning import BATCHES_PER_EPOCH, Net, momenta, trainer  # noqa: E402


def test_checkpoint_holds_lion_state(tmp_path):
    model = Net("lion")
    run = trainer(tmp_path)
    run.fit(model)
    run.save_checkpoint(tmp_path / "lion.ckpt")
    checkpoint = torch.load(tmp_path / "lion.ckpt", weights_only=False)
    (saved,) = checkpoint["optimizer_states"]
    (optimizer,) = run.optimizers
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.1, 0.0]
    assert all(set(entry) == {"exp_avg"} for entry in saved["state"].values())
    assert all(torch.equal(a, b) for a, b in zip([saved["state"][i]["exp_avg"] for i in range(len(saved["state"]))], momenta(optimizer)))

    fresh = trainer(tmp_path, max_steps=BATCHES_PER_EPOCH)  # no further steps: restore only
    restored_model = Net("lion", seed=1)
    fresh.fit(restored_model, ckpt_path=tmp_path / "lion.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(momenta(fresh.optimizers[0]), momenta(optimizer)))
    assert all(torch.equal(a, b) for a, b in zip(restored_model.state_dict().values(), model.state_dict().values()))


RESUME_SETUPS = {
    "configure_lion+warmup_cosine": (dict(optim="lion", scheduler="cosine", warmup_steps=3, total_steps=12), False),
    "callback+AdamW+StepLR": (dict(optim="dict_config"), True),
}


@pytest.mark.parametrize("setup", sorted(RESUME_SETUPS))
def test_resume_equals_uninterrupted_bit_exact(tmp_path, setup):
    """Train 3 epochs straight vs 1 epoch, checkpoint, and 2 more in a fresh Trainer and model."""
    options, with_callback = RESUME_SETUPS[setup]

    def callbacks():
        return [LionCallback(optimizer_kwargs={"fused": False})] if with_callback else []

    straight_model = Net(**options)
    straight = trainer(tmp_path / "a", callbacks(), max_steps=-1, max_epochs=3)
    straight.fit(straight_model)

    first = trainer(tmp_path / "b", callbacks(), max_steps=-1, max_epochs=1)
    first.fit(Net(**options))
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed_model = Net(**options, seed=7)  # different init: everything must come from the checkpoint
    resumed = trainer(tmp_path / "c", callbacks(), max_steps=-1, max_epochs=3)
    resumed.fit(resumed_model, ckpt_path=tmp_path / "epoch1.ckpt")

    assert resumed.global_step == straight.global_step == 3 * BATCHES_PER_EPOCH
    for name, tensor in straight_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    assert all(torch.equal(a, b) for a, b in zip(momenta(straight.optimizers[0]), momenta(resumed.optimizers[0])))
    assert straight.optimizers[0].param_groups[0]["lr"] == resumed.optimizers[0].param_groups[0]["lr"]
    assert type(resumed.optimizers[0]) is Lion
