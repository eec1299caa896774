"""The compiled query shapes a database keeps (storage.reads.compiled).

Not here: what a shape is, or compiling one (storage.reads).
"""
from collections import OrderedDict

# Compiled shapes kept per database, the most recently used. A shape is
# made of what a client sends (which filters, how many values, the sort), so
# the kinds are countless however each argument is bounded: kept without a
# bound they grow a worker without end. The lists a service's clients send
# are a few dozen shapes; 512 keeps all of them with room to spare, a few MB
# at most (a shape's SQL is 1 to 4 KB), and a client that sends new shapes
# on every request only ever recompiles its own (about 100 µs each).
SHAPES = 512


class Shapes(OrderedDict):
    """The compiled (sql, params) of query shapes, the least recently used
    dropped past `bound`. No lock: each call here is one step under the GIL,
    and a race costs at most a shape compiled twice or dropped early."""

    def __init__(self, bound=SHAPES):
        super().__init__()
        self.bound = bound

    def made(self, shape, make):
        found = self.get(shape)
        if found is None:
            found = self[shape] = make()
            while len(self) > self.bound:
                try:
                    self.popitem(last=False)
                except KeyError:   # another thread emptied it meanwhile
                    break
            return found
        try:
            self.move_to_end(shape)
        except KeyError:   # dropped by another thread meanwhile
            pass
        return found
