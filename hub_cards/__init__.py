"""Model-card templates and the cards of the paper's judge family (installed as `adajudge_hf.hub_cards`)."""
