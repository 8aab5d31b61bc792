"""The offline cue cache: proposals and GrabCut seed masks in HDF5 (``store`` is the contract)."""
