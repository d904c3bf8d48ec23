"""The inspection daemon: drop folders -> templates -> detection -> database + ZeroMQ alarm bus.

Never imports training code or torch at module level: it runs compiled artifacts.
"""
