"""The optim names lion_integrations.hf registers: real OptimizerNames members, idempotent, beside
bitsandbytes' names, routed by the handler table (or the legacy wrapper), and the quantized variants."""

from __future__ import annotations

import importlib
import sys

import pytest

transformers = pytest.importorskip("transformers")

import lion_integrations  # noqa: E402
import lion_integrations.hf as hf  # noqa: E402
from lion_integrations import Lion  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.training_args import OptimizerNames  # noqa: E402


def test_lion_is_a_real_optimizer_names_member():
    member = OptimizerNames("lion")
    assert member is OptimizerNames.LION_INTEGRATIONS is OptimizerNames["LION_INTEGRATIONS"]
    assert member in list(OptimizerNames) and member == "lion" and member.value == "lion"
    # Built like a declared member: same attributes as a native one (plus how it pickles).
    assert sorted(vars(member).keys() - {"__reduce_ex__"}) == sorted(vars(OptimizerNames.SGD))
    assert TrainingArguments(output_dir="unused", optim="lion", report_to="none").optim is member


def test_register_is_idempotent_and_keeps_bitsandbytes_names():
    count = len(OptimizerNames)
    assert hf.register() == hf.register() == hf.available_names()
    assert len(OptimizerNames) == len(list(OptimizerNames)) == count
    assert OptimizerNames.LION.value == "lion_32bit"  # transformers' bitsandbytes member stays as it is
    for value in ("lion_32bit", "lion_8bit", "paged_lion_32bit", "paged_lion_8bit"):
        assert OptimizerNames(value).name != "LION_INTEGRATIONS"


def test_handler_table_routes_our_names_only():
    trainer_optimizer = pytest.importorskip("transformers.trainer_optimizer")
    handlers = getattr(trainer_optimizer, "_OPTIMIZER_HANDLERS", None)
    if handlers is None:
        pytest.skip("transformers < 5: no handler table (legacy route tested below)")
    assert handlers[OptimizerNames("lion")] is hf.registration.optimizer_handler
    for member in (OptimizerNames.LION, OptimizerNames.LION_8BIT, OptimizerNames.PAGED_LION):
        assert handlers[member] is trainer_optimizer._get_bitsandbytes_optimizer


def test_bitsandbytes_lion_32bit_unchanged():
    pytest.importorskip("bitsandbytes")
    args = TrainingArguments(output_dir="unused", optim="lion_32bit", report_to="none")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls.__module__.startswith("bitsandbytes")
    assert kwargs["betas"] == (args.adam_beta1, args.adam_beta2) == (0.9, 0.999)


def test_legacy_route_wraps_and_delegates():
    """The transformers < 5 path, run here on a stand-in Trainer class."""

    class OldTrainer:
        @staticmethod
        def get_optimizer_cls_and_kwargs(args, model=None):
            return "original", {"optim": args.optim}

    original = OldTrainer.__dict__["get_optimizer_cls_and_kwargs"].__func__
    hf.registration.route_legacy_trainer(OldTrainer)
    hf.registration.route_legacy_trainer(OldTrainer)  # idempotent: wrapped once
    assert OldTrainer.get_optimizer_cls_and_kwargs.__wrapped__ is original

    args = TrainingArguments(output_dir="unused", optim="lion", optim_args="beta2=0.98", report_to="none")
    cls, kwargs = OldTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls is Lion and kwargs["betas"] == (0.9, 0.98)
    sgd = TrainingArguments(output_dir="unused", optim="sgd", report_to="none")
    assert OldTrainer.get_optimizer_cls_and_kwargs(sgd) == ("original", {"optim": OptimizerNames.SGD})


def test_quantized_names_only_when_the_class_exists():
    for name in ("lion_q8", "lion_q4"):
        if hf.optimizer_class(name) is None:
            with pytest.raises(ValueError, match=hf.VARIANTS[name][1]):
                OptimizerNames(name)
            assert name not in [member.value for member in OptimizerNames]
        else:
            args = TrainingArguments(output_dir="unused", optim=name, optim_args="block_size=128", report_to="none")
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
            assert cls is hf.optimizer_class(name) and kwargs["betas"] == hf.DEFAULT_BETAS
            assert kwargs["block_size"] == 128
            args.optim_args = "block_sise=128"
            with pytest.raises(ValueError, match="Unknown optim_args key 'block_sise'.*block_size"):
                Trainer.get_optimizer_cls_and_kwargs(args)


def test_variant_without_its_class_is_left_out(monkeypatch):
    monkeypatch.setitem(hf.VARIANTS, "lion_q2", ("LION_INTEGRATIONS_Q2", "Lion2bit"))
    assert "lion_q2" not in hf.register()
    assert "lion_q2" not in [member.value for member in OptimizerNames]
    with pytest.raises(ValueError, match="lion_q2 is not a valid OptimizerNames.*Lion2bit"):
        TrainingArguments(output_dir="unused", optim="lion_q2", report_to="none")


def test_import_without_transformers_names_the_hf_extra(monkeypatch):
    for name in [name for name in sys.modules if name == "transformers" or name.startswith("transformers.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "lion_integrations.hf")
    monkeypatch.delattr(lion_integrations, "hf", raising=False)
    with pytest.raises(ImportError, match=r"lion-integrations\[hf\]"):
        importlib.import_module("lion_integrations.hf")
