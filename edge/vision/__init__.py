"""On-device vision: TFLite runtime, face detection, alignment and embedding."""
