"""The data room: samples in the reference's per-sample files or packed shards -> batches for training.

    formats        one sample of each layout, read and validated (DataError naming the file)
    sources        random access to a dataset: per-sample files, packed ArrayRecord shards, synthetic
    pipeline       grain: per-epoch shuffle, whole global batches, this process's rows, checkpointable
    packing        packed rows (data.packing): which samples share each row, planned from their lengths
    packed_batches packed rows in grain: the plans, this process's rows decoded
    bad_samples    bad samples counted once, the stop decision shared by all processes
    text_dataset   raw text -> per-sample files or packed shards
    packed_writer  per-sample files -> packed shards + manifest
    packed_reader  a packed directory's manifest and samples
    check          a whole dataset validated up front

`python -m lgdlm_jax.prepare_data` is the command line of text_dataset, packed_writer and check.
"""

from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError
from lgdlm_jax.data.formats import DataIOError
from lgdlm_jax.data.formats import SampleFiles
from lgdlm_jax.data.formats import SampleSpec
from lgdlm_jax.data.formats import read_sample
from lgdlm_jax.data.pipeline import TrainIterator
from lgdlm_jax.data.pipeline import make_datasets
from lgdlm_jax.data.pipeline import order_position
from lgdlm_jax.data.sources import discover_samples
from lgdlm_jax.data.sources import split_train_val
