"""Model building: datasets → Keras (tf_keras) → pruning → quantization → models/.

The only package that imports TensorFlow.
"""
