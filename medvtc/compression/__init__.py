"""The compressors task: the shared compressor core trained and measured on its own.

- `token_grids`: the embedded synthetic token-grid dataset (generator, reader, `describe`);
- `autoencoder`: `CompressionAutoencoder` (compressor -> K tokens -> decoder -> N tokens) and
  its reconstruction loss;
- `task`: the `compressors` task of the `medvtc` command line (data, train, eval, bench);
- `bench`: `medvtc bench --task compressors` (every registered compressor side by side).

An application like `medvtc.medical` and `medvtc.robotics`: it depends on `medvtc.common`, and
nothing in `medvtc.common` depends on it. Nothing heavy is imported here.
"""
