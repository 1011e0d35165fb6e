"""What runs: the Docker engine, images, loopback containers and ports, Kamailio and Asterisk."""
