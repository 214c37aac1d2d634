"""A user class for the capacity finder's tests only: the locustfile's ApiUser with its own tasks, run in a
fixed order instead of picked at random.

Random picks weighted 16:3:1 make whether a short run sent any batch or any invalid request, and more single
predictions than batches, a matter of how many requests the machine completed (26 in 10 s on a busy 2-core
machine: no invalid request at all about one run in four). In this order every user sends each kind within
its first four requests, and at every point of its run it has sent more single predictions than batches. The
weights themselves are checked on ApiUser in the test. Select it by name: `locust -f locustfile.py,capacity.py,
tests/ordered_user.py OrderedApiUser`.
"""

from __future__ import annotations

from locust import SequentialTaskSet

from locustfile import ApiUser  # the module locust already loaded from the first -f file


class InOrder(SequentialTaskSet):
    # ApiUser's task functions use only `self.client`, which a task set hands to its user's client.
    tasks = [ApiUser.invalid, ApiUser.predict, ApiUser.predict, ApiUser.predict_batch, ApiUser.predict]  # noqa: RUF012 - locust API


class OrderedApiUser(ApiUser):
    pass


# Set after the class is made: declared in its body, locust's metaclass would add ApiUser's weighted tasks to it.
OrderedApiUser.tasks = [InOrder]
