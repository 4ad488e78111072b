"""Twilio-facing web layer: voice webhook, stream status callback and the media-stream WebSocket.

It turns Twilio's audio into persisted utterances and queued jobs. It does no ML and never waits
on a worker, because Twilio discards audio from a server that falls behind.
"""
