"""Network classes, one a file; build them through models.factory.build_model."""
from models.networks.base import MultiTaskModel
from models.networks.mixture import MixtureOfExpertsModel
from models.networks.mmoeex import MMoEEx
from models.networks.shared_bottom import SharedBottom
from models.networks.single_task import SingleTaskNets

__all__ = ["MMoEEx", "MixtureOfExpertsModel", "MultiTaskModel", "SharedBottom", "SingleTaskNets"]
