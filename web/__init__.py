"""The demo page's static files, shipped inside the package as ``asrhub.web`` (setup.cfg maps
this folder there) so that ``importlib.resources`` finds them from a wheel or an editable
install alike. No Python here: the page has no build step."""
