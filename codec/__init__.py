"""medcodec's numpy-only core, shared by the host and the board.

Everything here must run on an Ultra96 (aarch64, numpy, pydicom, constriction):
no torch, no imagecodecs. ``tests/codec/test_no_torch.py`` enforces it.
"""
