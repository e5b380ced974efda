"""Everything between an inbound event and what the chat shows.

Who may talk, broker commands, building the prompt, and delivering the reply
(rendering, splitting, edit pacing, reactions). Sits on :mod:`broker.sessions`
and speaks to the front-ends only through :mod:`broker.frontends.base`.
"""
