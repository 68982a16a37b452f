"""The data layer: containers (``readers``) × record formats (``formats``) → canonical conversations
(``canonical``), checked by a registry of checks (``checks``), split (``splits``) and written back out in the
formats hosted providers take (``formats`` again)."""
