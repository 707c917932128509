"""Sign-vote mode: Lion across processes with one bit per parameter on the wire (Distributed Lion).

* `SignVoteLion`: the optimizer (each rank's own momentum; the ranks vote on update signs);
* `skip_gradient_allreduce`, `keep_local_gradients`: DDP without its gradient all-reduce;
* `save_rank_state`, `load_rank_state`: per-rank checkpoints;
* `count_collectives`, `counting_allreduce_hook`: bytes sent, from the collectives issued.
"""

from .ballots import choose_collective
from .checkpoint import load_rank_state, save_rank_state
from .ddp import keep_local_gradients, skip_gradient_allreduce
from .optimizer import VOTES, SignVoteLion
from .traffic import CollectiveLog, count_collectives, counting_allreduce_hook

__all__ = [
    "SignVoteLion", "VOTES", "choose_collective", "keep_local_gradients", "skip_gradient_allreduce",
    "save_rank_state", "load_rank_state", "count_collectives", "counting_allreduce_hook", "CollectiveLog",
]
