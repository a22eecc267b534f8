"""The `embryo_timelapse` TFDS builder, defined in blastjax.data.builder (tfds_builders
uses blastjax.data, never the reverse); this module is where TFDS's tooling finds it."""

from blastjax.data.builder import (BUILDER_CONFIGS, CLASS_NAMES, INDEX_FILE, REPORT_FILE,
                                   EmbryoTimelapse, EmbryoTimelapseConfig, features, index_entry,
                                   to_example)

__all__ = ["BUILDER_CONFIGS", "CLASS_NAMES", "INDEX_FILE", "REPORT_FILE", "EmbryoTimelapse",
           "EmbryoTimelapseConfig", "features", "index_entry", "to_example"]
