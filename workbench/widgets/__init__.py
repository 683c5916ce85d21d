"""Interactive views (ipywidgets 8 + plotly FigureWidget) over workbench records.

Widgets only wire controls to the pure figures in `workbench.viz`; each has `save_html(path)`.
"""

from .attention import AttentionView
from .base import View
from .compare import CompareView
from .dashboard import Dashboard, show
from .gradients import GradientFlow
from .inspector import LayerInspector
from .lens import LogitLensView
from .memory import MemoryPanel
from .patching import PatchingView
from .stepper import GenerationStepper

__all__ = ["AttentionView", "CompareView", "Dashboard", "GenerationStepper", "GradientFlow", "LayerInspector",
           "LogitLensView", "MemoryPanel", "PatchingView", "View", "show"]
