"""The `embryo_timelapse` TFDS dataset."""

from tfds_builders.embryo_timelapse.embryo_timelapse import EmbryoTimelapse, EmbryoTimelapseConfig

__all__ = ["EmbryoTimelapse", "EmbryoTimelapseConfig"]
