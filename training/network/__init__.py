"""The inClust+ network and its loss: one definition, used by training, mapping and export."""
