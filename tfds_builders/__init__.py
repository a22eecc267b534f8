"""TFDS dataset builders of blastjax (importing one registers it with TFDS)."""
