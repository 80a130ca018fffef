"""The Gradient Bank: storage schemes (schemes), the on-disk format and its checks (on_disk), the reader (reader),
the writer (writer) and 04_encode (encode), the one code that computes and stores passage gradients."""
