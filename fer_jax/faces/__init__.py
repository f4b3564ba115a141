"""Faces in ordinary photos and videos: reading inputs, finding faces, framing them as FER2013 does.

- `io`: paths to image and video files, decoded frames, one clear error per bad file;
- `detect`: MTCNN (from the `mtcnn` package, on TensorFlow's CPU) to boxes and eye landmarks;
- `align`: a detected face to the 48 x 48 grayscale crop the models were trained on;
- `sampling`: turned, scaled squares cut out of an image without aliasing;
- `annotate`: boxes and labels drawn on the input image.
"""
