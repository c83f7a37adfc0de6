"""From files to model-ready arrays: decode (``imageio``), index a dataset folder
(``datasets``), preprocess deterministically (``preprocess``), cache as memory-mapped
uint8 (``cache``), and the one uint8 -> model-input transform plus augmentation
(``transforms``). ``demo`` draws the synthetic dataset. Nothing here trains."""
