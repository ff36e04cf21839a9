from hydra.experimental.callback import Callback


class CompareAfterSweep(Callback):
    pass
