"""The stand-in for anywidget's model that the browser tests render widgets' ES modules through:
``get``/``set``/``on``/``off``/``save_changes``, counting saves and live listeners (so a test can check
that a view cleans up after itself). Pages put it in their module script with ``.replace("__FAKE_MODEL__",
FAKE_MODEL)``."""

FAKE_MODEL = """
function fakeModel(state) {
  const handlers = new Map();
  const model = {
    saves: 0,
    get: (key) => state[key],
    on(event, callback) {
      if (!handlers.has(event)) handlers.set(event, new Set());
      handlers.get(event).add(callback);
    },
    off(event, callback) { handlers.get(event)?.delete(callback); },
    set(key, value) {
      state[key] = value;
      for (const callback of handlers.get(`change:${key}`) ?? []) callback();
    },
    save_changes() { model.saves += 1; },
    listeners: () => [...handlers.values()].reduce((n, s) => n + s.size, 0),
  };
  return model;
}
"""
