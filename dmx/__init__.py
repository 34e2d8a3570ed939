"""dmx: DivideMix (Li, Socher, Hoi, ICLR 2020) as resumable, tracked experiments."""

__version__ = "0.1.0"
