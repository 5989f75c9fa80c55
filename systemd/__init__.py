"""The systemd unit and the commented example config, shipped inside the package as
``asrhub.systemd`` (setup.cfg maps this folder there); ``asrhub init`` installs them."""
