"""Client techniques, one module each (`base.py` has the contract). Importing this package
registers the built-ins: sgd, dpsgd, fedprox, fedld, anchor and miner (FedAMD), evaluate."""

from fedcore.clients.registry import TaskError
from fedcore.clients.techniques import dpsgd, evaluate, fedamd, fedld, fedprox, sgd
from fedcore.clients.techniques.base import TECHNIQUES, Technique, register, technique_type

__all__ = [
    "TECHNIQUES",
    "TaskError",
    "Technique",
    "dpsgd",
    "evaluate",
    "fedamd",
    "fedld",
    "fedprox",
    "register",
    "sgd",
    "technique_type",
]
