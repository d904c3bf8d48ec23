"""The Reference-based Defect Detection Network (Zeng et al., IEEE TIP 2021) in PyTorch."""
