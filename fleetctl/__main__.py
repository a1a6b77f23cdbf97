from fleetctl.fast import main

main()
