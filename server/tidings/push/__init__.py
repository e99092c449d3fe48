"""Platform push: Web Push, FCM and APNs as delivery channels (issue 16).

``endpoints`` validates what a device registers; ``providers`` holds what the
three providers share (the message, the result, retries with backoff and
``Retry-After``, bounded concurrency); ``webpush``, ``fcm`` and ``apns`` speak
each platform's protocol through its well-kept library (pywebpush / py-vapid,
google-auth, aioapns); ``vapid`` keeps the server's VAPID key pair in the data
folder like the JWT secret.
"""
