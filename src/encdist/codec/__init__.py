"""The codec's layers below the latent codec: the bitstream format (:mod:`.bitstream`), CDF
tables and safe range coding (:mod:`.coding`), backward adaptation (:mod:`.backward`), the
straight-through histogram (:mod:`.histogram`) and the distribution codec (:mod:`.pdf_model`)."""
