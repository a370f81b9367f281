"""Pictures of detections and small line plots (OpenCV): what `detkit predict`, validation and the
training curves draw. Imports no Lightning, so inference can draw without the training stack.
"""

from detkit.visualize.drawing import class_colour, draw_detections, plot_curves, save_png, to_uint8_rgb

__all__ = ["class_colour", "draw_detections", "plot_curves", "save_png", "to_uint8_rgb"]
