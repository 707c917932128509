"""`SignVoteLion`: Lion across processes with one bit per parameter on the wire (Distributed Lion).

Liu et al. 2024, "Communication Efficient Distributed Training with Distributed Lion" (arXiv
2404.00438). Every rank runs the rule of `rule.py` on its own gradient and momentum up to the
update direction, the ranks vote on the directions (`ballots.py`), and every rank applies the voted
direction and the weight decay to its parameters:

    u_r = sign(b1*m_r + (1-b1)*g_r)              # rank r's ballot (cautious: 0 where sign(g_r) differs)
    m_r = b2*m_r + (1-b2)*g_r                    # rank r's momentum, from its own gradient only
    s   = sum_r u_r over the ranks with a gradient for the parameter
    v   = sign(s)           (vote="majority"; a tie, s = 0, gives 0: the element does not move)
        = s / voters        (vote="average")
    p   = p*(1 - lr*wd) - lr*v                   # the same on every rank

The sums are integers and every rank computes v from the same ones, so the parameters stay
bit-identical on every rank; the momenta differ by rank. With cautious masking, lr is divided by
the fraction of the parameter's elements whose voted v is nonzero (`rule.cautious_step_size`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..checks import check_bool, check_choice
from ..optimizer import Lion, closure_loss, finite_flags, param_description
from ..rule import (
    TENSOR_OPS,
    LionCoefficients,
    cautious_step_size,
    lion_apply_,
    lion_direction,
    lion_momentum_,
    store_weight_,
    weight_in,
)
from ..sharding import DTensor
from .ballots import COLLECTIVES, all_gather_rows, choose_collective, exchange_ballots
from .ddp import LOCAL_GRADIENT_PARAMS, skip_allreduce_when_wrapped

VOTES = ("majority", "average")


def voted_direction(sums: torch.Tensor, voters: int, vote: str) -> torch.Tensor:
    """The applied direction (fp32, in place of `sums`) from the ballots' sums over `voters` ranks."""
    sums = sums.to(torch.float32)
    return sums.sign_() if vote == "majority" else sums.div_(voters)


class SignVoteLion(Lion):
    r"""Lion for data-parallel training where the ranks exchange update signs instead of gradients.

    Each rank keeps its own momentum, updated from its own (not all-reduced) gradient; a step sends
    one bit per parameter element (`lion_integrations.vote.ballots`) and every rank applies the same
    voted update, so parameters stay identical on every rank. See the module docstring for the math.

    Use it with DDP whose gradient all-reduce is skipped: `skip_gradient_allreduce(ddp_model)`, or
    Lightning's ``DDPStrategy(ddp_comm_hook=keep_local_gradients)``; with `skip_ddp_allreduce` (the
    default) the optimizer also registers that hook itself on the first DDP model that runs a forward
    over its parameters (how Hugging Face's ``optim="lion_vote"`` gets it). Gradient accumulation
    (``no_sync``, or any number of backward passes) is voted once, at `step`. Without a process
    group it is `Lion`, one rank voting.

    Args:
        params, lr, betas, weight_decay, maximize, momentum_dtype, cautious, kahan_sum: as for `Lion`
            (bf16/fp16 weights keep a Kahan buffer by default; stochastic rounding is refused: the
            ranks' draws would differ and the replicas drift apart).
        nonfinite: "skip" only: a gradient element that is NaN or inf abstains (ballot 0) and keeps its
            momentum, with `Lion`'s warning and count ("raise" would leave the other ranks waiting).
        vote: 'majority' (sign of the sum of the ballots; ties give 0) or 'average' (their mean).
        collective: 'auto' (the format that sends fewer bytes at this world size), 'all_gather'
            (packed bits) or 'all_reduce' (int8 counts); see `ballots.py`.
        process_group: the ranks that vote (default: the whole world).
        skip_ddp_allreduce: register `keep_local_gradients` on the DDP model that first runs these
            parameters, if it has no communication hook yet.

    Checkpoints: `state_dict` holds this rank's momenta and ``"vote": {"rank", "world_size"}``. Save
    one per rank (`save_rank_state`) and resume bit-exactly with `load_rank_state`. Loading another
    rank's state (as Trainer and Lightning do, which save rank 0's) warns and starts every rank from
    those momenta.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        vote: str = "majority",
        cautious: bool = False,
        collective: str = "auto",
        maximize: bool = False,
        momentum_dtype: torch.dtype | str | None = None,
        nonfinite: str = "skip",
        kahan_sum: bool | None = None,
        process_group: Any = None,
        skip_ddp_allreduce: bool = True,
    ) -> None:
        check_choice(vote, "vote", VOTES)
        if nonfinite != "skip":
            raise ValueError(
                f"Invalid nonfinite: {nonfinite!r} (SignVoteLion supports 'skip' only: a rank that raised "
                "alone would leave the other ranks waiting in the vote's collective)"
            )
        check_choice(collective, "collective", COLLECTIVES)
        check_bool(skip_ddp_allreduce, "skip_ddp_allreduce")
        super().__init__(
            params, lr, betas, weight_decay,
            maximize=maximize, foreach=False, fused=False, momentum_dtype=momentum_dtype, cautious=cautious,
            nonfinite=nonfinite, kahan_sum=kahan_sum,
        )
        self.vote, self.collective, self.process_group = vote, collective, process_group
        self._checked_first_step = False
        self._attach_handle = skip_allreduce_when_wrapped(self._voting_params()) if skip_ddp_allreduce else None
        if self._attach_handle is not None:
            weakref.finalize(self, self._attach_handle.remove)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):  # torch's own check refuses a set
            param_group["params"] = params = list(params)
        for param in [params] if isinstance(params, torch.Tensor) else params:
            if isinstance(param, DTensor):
                raise ValueError(
                    "Invalid params: SignVoteLion votes on replicated parameters (DDP); a DTensor (FSDP2, "
                    "tensor parallel) is sharded, and its gradients are already reduced: use Lion"
                )
        if param_group.get("stochastic_rounding"):
            raise ValueError(
                "Invalid stochastic_rounding=True for SignVoteLion: each rank would draw its own rounding and "
                "the replicas drift apart; use kahan_sum (deterministic) for bf16/fp16 weights"
            )
        super().add_param_group(param_group)

    # --- The world that votes. ------------------------------------------------------------------

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1

    def rank_and_world_size(self) -> tuple[int, int]:
        """This process's rank among the voters and their number ((0, 1) without a process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)

    def _voting_params(self) -> list[torch.Tensor]:
        """Every parameter that may get a gradient, in a fixed order: the ballots' layout."""
        return [param for group in self.param_groups for param in group["params"] if param.requires_grad]

    # --- The step. ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One voted step (collective: every voting rank must call it); `closure` re-evaluates the loss."""
        loss = closure_loss(closure)
        if self._attach_handle is not None:  # after the first backward a hook can no longer be added
            self._attach_handle.remove()
            self._attach_handle = None
        entries, ballots, skipped = [], [], []
        for group_index, group in enumerate(self.param_groups):
            coefficients = LionCoefficients.from_group(group["lr"], group["betas"], group["weight_decay"])
            for index, param in enumerate(group["params"]):
                if not param.requires_grad:
                    continue
                entries.append((group, param, coefficients))
                ballot, nonfinite = self._cast_ballot(param, group, coefficients)
                ballots.append(ballot)
                if nonfinite is not None:
                    skipped.append((param_description(group, group_index, index), nonfinite, param.numel()))
        self._report_nonfinite(skipped)
        if not entries:
            return loss
        sums, voters = self._tally(ballots, [param.numel() for _, param, _ in entries], entries[0][1].device)
        for (group, param, coefficients), total, count in zip(entries, sums, voters):
            if count:
                self._apply_vote(param, group, coefficients, voted_direction(total, count, self.vote).to(param.device))
        return loss

    def _cast_ballot(self, param, group, coefficients) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This rank's ballot for `param` (flattened -1/0/+1), its momentum advanced, and the count of
        non-finite gradient elements (None when all are finite); (None, None) without a gradient.

        An element whose gradient is NaN or inf abstains (ballot 0) and keeps its momentum."""
        grad = self._local_grad(param, group)
        if grad is None:
            return None, None
        exp_avg = self._init_state(param, group)["exp_avg"]
        grad32, exp_avg32 = grad.float(), exp_avg.float()
        finite, nonfinite = None, None
        if not finite_flags([grad32])[0]:
            finite = torch.isfinite(grad32)
            nonfinite = finite.numel() - finite.sum()
            grad32 = torch.where(finite, grad32, exp_avg32)  # lerp(m, m, w) = m: the momentum stays
        ballot = lion_direction(TENSOR_OPS, grad32, exp_avg32, coefficients.update_weight, cautious=group["cautious"])
        lion_momentum_(TENSOR_OPS, exp_avg32, grad32, coefficients.momentum_weight)
        if finite is not None:
            ballot.masked_fill_(~finite, 0.0)
        if exp_avg32 is not exp_avg:
            exp_avg.copy_(exp_avg32)
        return ballot.reshape(-1), nonfinite

    def _tally(self, ballots, sizes, device):
        if not self._distributed():
            return ballots, [int(b is not None) for b in ballots]
        if not self._checked_first_step:
            self._check_first_step()
        _, world_size = self.rank_and_world_size()
        expect_zeros = any(group["cautious"] for group in self.param_groups)
        collective = choose_collective(world_size, expect_zeros, self.collective)
        return exchange_ballots(ballots, sizes, device, group=self.process_group, collective=collective)

    def _apply_vote(self, param, group, coefficients, direction: torch.Tensor) -> None:
        step_size = coefficients.step_size
        if group["cautious"]:
            step_size = cautious_step_size(step_size, int(torch.count_nonzero(direction)), direction.numel())
        state = self.state[param]
        self.init_compensation(param, state, group)
        compensation, _ = self.weight_store_of(param, group, state)
        weight = weight_in(param, compensation)
        lion_apply_(TENSOR_OPS, weight, direction.view_as(weight), step_size, coefficients.decay)
        store_weight_(param, weight, compensation)

    def _check_first_step(self) -> None:
        """Raise if the ranks' parameters differ (the vote would keep them apart); warn if some
        gradients were not kept local (the vote then saves no communication)."""
        self._checked_first_step = True
        params = self._voting_params()
        fingerprint = torch.stack([
            sum((p.detach().double().sum() for p in params), torch.zeros((), dtype=torch.float64)),
            sum((p.detach().double().square().sum() for p in params), torch.zeros((), dtype=torch.float64)),
        ]).to(params[0].device)
        gathered = all_gather_rows(fingerprint, self.process_group)
        if not torch.equal(gathered, fingerprint.expand_as(gathered)):
            raise RuntimeError(
                "SignVoteLion: the parameters differ between ranks at the first step, and a vote keeps them "
                "apart; start every rank from the same weights (DistributedDataParallel broadcasts them)"
            )
        reduced = [p for p in params if p.grad is not None and p not in LOCAL_GRADIENT_PARAMS]
        if reduced:
            warnings.warn(
                f"SignVoteLion: {len(reduced)} of {len(params)} parameters got gradients that no "
                "keep_local_gradients hook left local; if DDP (or another wrapper) all-reduces them, the vote saves "
                "no communication. Call lion_integrations.vote.skip_gradient_allreduce(ddp_model)",
                RuntimeWarning,
                stacklevel=3,
            )

    # --- State dicts: one per rank. -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's state (its momenta differ from the other ranks'), with ``"vote"``: its rank
        and the world size."""
        state = super().state_dict()
        rank, world_size = self.rank_and_world_size()
        state["vote"] = {"rank": rank, "world_size": world_size}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a rank's state; warns when it is another rank's or another world size's (every rank
        loading it then starts from those momenta)."""
        super().load_state_dict(state_dict)
        saved = state_dict.get("vote") if isinstance(state_dict, dict) else None
        rank, world_size = self.rank_and_world_size()
        if saved is None:
            source = "a state dict without the vote's rank (e.g. Lion's)"
        elif (saved.get("rank"), saved.get("world_size")) != (rank, world_size):
            source = f"rank {saved.get('rank')} of a {saved.get('world_size')}-rank run"
        else:
            return
        if world_size > 1:
            warnings.warn(
                f"SignVoteLion (rank {rank} of {world_size}): momenta loaded from {source}; every rank that "
                "loads it starts from those momenta (the ranks' own momenta are restored by "
                "lion_integrations.vote.load_rank_state)",
                RuntimeWarning,
                stacklevel=2,
            )
