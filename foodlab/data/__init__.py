"""Food segmentation data: synthetic plates, folder layouts, fast indexing, the dataset and its loader."""
