"""Synthetic molecules and assay panels the project makes itself, so that
the main job and the tests run with no network: reagents (building_blocks),
reactions that join them (enumeration), a PCBA-shaped labelled panel
(panel) and unlabeled screening libraries (library). Featurization treats
their output as any other input; scoring never imports them."""
