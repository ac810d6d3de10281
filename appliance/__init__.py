"""bft-anchor: anchor a BFT chain's quorum certificates in a proof-of-work chain."""

__version__ = "0.1.0"
