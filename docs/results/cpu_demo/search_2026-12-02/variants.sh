# The search's settings: 5x5 rank 1, 4 layers, 4 heads, FFN 4x width, Adam 1e-3 unless stated
V=(
 "d64_i07: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.07 train.steps=10800"
 "d64_i10: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.10 train.steps=10800"
 "d64_i14: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.14 train.steps=10800"
 "d64_i10_lr2e-3: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.10 train.lr=2e-3 train.steps=10800"
 "d64_i10_h8: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.10 model.num_attention_heads=8 train.steps=8500"
 "d64_i10_L2: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.10 model.num_hidden_layers=2 train.steps=21500"
 "d64_i10_4x4: model.hidden_size=64 model.intermediate_size=256 train.batch_size=64 model.initializer_range=0.10 data.m=4 data.n=4 train.steps=17000"
 "d32_i14: model.hidden_size=32 model.intermediate_size=128 train.batch_size=64 model.initializer_range=0.14 train.steps=20000"
 "d64_i10_b32: model.hidden_size=64 model.intermediate_size=256 train.batch_size=32 model.initializer_range=0.10 train.steps=21000"
 "d128_i05_b32: train.batch_size=32 train.steps=7500"
)
