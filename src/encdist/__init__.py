"""encdist: learned compression of encoding distributions.

Implements M. Ulhaq and I. V. Bajić, "Learned Compression of Encoding
Distributions", Proc. IEEE ICIP 2024 (arXiv:2406.13059) as CompressAI
components, with CompressAI-Trainer style training (``compressai-train``).

Importing the package registers its models (``bmshj2018-factorized-pdf``,
``bmshj2018-hyperprior-pdf``, ``mbt2018-mean-pdf``), latent codecs, criteria
and datasets in ``compressai.registry``.
"""

__version__ = "0.1.0"

from encdist import latent_codecs, models  # noqa: F401,E402  (registration)
from encdist.codec import pdf_model  # noqa: F401,E402
from encdist.training import losses  # noqa: F401,E402
