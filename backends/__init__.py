"""Model backends (docs/models.md sections 0-4).

- `registry`: `BackendSpec`, `get_backend(name)`, third-party backends via the
  `kunbench.backends` entry-point group.
- `input_layer`: the shared input layer (fused hashed embedding table, item table shared between
  the candidate ad and the histories, dense grouped projection, padded sequence tokens).
- `jagged`: one stream as padded columns (most recent T kept, masks), merge of streams by time;
  the padded views themselves are `kunbench.ops.jagged`, shared with the kernels.
- `modules`: reusable layers (MLP, token-axis linear/MLP, Gate, PMA, RoPE MHA with key padding
  mask, naive PFFN, low-rank DCN, dot interaction, DHEN layer), each with its FLOPs formula.
- `common`: model base class (`embedding_parameters()` / `dense_parameters()`,
  `set_output_bias(base_rate)`), `parameter_counts(model)`, config validation helpers.
- `wukong`, `interformer`: the two baselines, each exporting `SPEC`.

FLOPs convention (docs/models.md 4): analytic forward matmul FLOPs, 2 per multiply-add, on each
example's true (unpadded) lengths; not counted: embeddings, layer norms, activations, softmax,
scaling/masking, RoPE rotations, residual adds, biases, gating products, pooling, hashing, merging.
Training FLOPs = 3 x forward where used.
"""
