"""Lightning's ``lightning.pytorch.utilities`` names that stepstone provides."""

from stepstone.core.hparams import AttributeDict
from stepstone.utilities.parsing import is_picklable

__all__ = ["AttributeDict", "is_picklable"]
