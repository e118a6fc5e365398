"""The LGDLM MultimodalMMDiT in Flax: layers, attention, hyper-connections, the MMDiT backbone, the
model, and `passes` (how everything above the model calls it)."""

from lgdlm_jax.model.multimodal import COMPUTE_DTYPES
from lgdlm_jax.model.multimodal import MultimodalMMDiT
from lgdlm_jax.model.multimodal import as_one_latent_token
