"""Built-in prunelens plugins. They register through the same hooks a third party uses."""
