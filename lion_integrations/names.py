"""Short names of our optimizers, one table for every adapter (Hugging Face's ``optim``, Lightning's
``optimizer_class``): name -> class path inside `lion_integrations`."""

OPTIMIZER_NAMES: dict[str, str] = {
    "lion": "Lion",
    "lion_q8": "Lion8bit",
    "lion_q4": "Lion4bit",
    "lion_discovered": "discovery.DiscoveredOptimizer",
    "lion_vote": "vote.SignVoteLion",
}
