"""Multilayer perceptron on tiles: any sizes, sigmoid/ReLU/tanh hidden layers, softmax + NLL.

Each layer is one tile of (fan_in + 1) x fan_out: the last input line carries a constant 1 so the
bias lives on the array like any weight (aihwkit's analog bias)."""
from __future__ import annotations

import numpy as np

ACTIVATIONS = ("sigmoid", "relu", "tanh")


def _act(name, a):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(a, -60, 60)))
    if name == "relu":
        return np.maximum(a, 0.0)
    return np.tanh(a)


def _dact(name, h):
    """Derivative expressed through the activation's output h."""
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "relu":
        return (h > 0).astype(h.dtype)
    return 1.0 - h * h


def init_weights(sizes, rng: np.random.Generator):
    """Glorot-uniform weights, zero bias; shared by the analog net and its floating-point twin."""
    out = []
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        lim = np.sqrt(6.0 / (fi + fo))
        W = np.zeros((fi + 1, fo))
        W[:fi] = rng.uniform(-lim, lim, (fi, fo))
        out.append(W)
    return out


class MLP:
    def __init__(self, tiles, activation="sigmoid"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.layers = list(tiles)
        self.activation = activation

    @staticmethod
    def _with_bias(h):
        return np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)

    def forward(self, X, count=True):
        xs = []
        h = X
        for k, L in enumerate(self.layers):
            x = self._with_bias(h)
            xs.append(x)
            a = L.forward(x, count)
            h = _act(self.activation, a) if k < len(self.layers) - 1 else a
        return xs, h

    @staticmethod
    def _softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def train_batch(self, X, y, lr):
        """One mini-batch of SGD on the mean NLL; returns (loss sum, correct count)."""
        xs, z = self.forward(X)
        P = self._softmax(z)
        b = X.shape[0]
        loss = -np.log(np.maximum(P[np.arange(b), y], 1e-300)).sum()
        correct = int((z.argmax(1) == y).sum())
        d = P
        d[np.arange(b), y] -= 1.0
        d /= b
        ds = [None] * len(self.layers)
        ds[-1] = d
        for k in range(len(self.layers) - 1, 0, -1):
            g = self.layers[k].backward(ds[k])[:, :-1]
            h = xs[k][:, :-1]
            ds[k - 1] = g * _dact(self.activation, h)
        # all deltas are computed before any array changes, as in hardware (update phase last)
        for k, L in enumerate(self.layers):
            L.update(xs[k], -ds[k], lr)
        return loss, correct

    def evaluate(self, X, y, batch=500):
        loss = 0.0
        correct = 0
        for i in range(0, len(X), batch):
            _, z = self.forward(X[i:i + batch], count=False)
            P = self._softmax(z)
            yy = y[i:i + batch]
            loss += -np.log(np.maximum(P[np.arange(len(yy)), yy], 1e-300)).sum()
            correct += int((z.argmax(1) == yy).sum())
        return loss / len(X), correct / len(X)
