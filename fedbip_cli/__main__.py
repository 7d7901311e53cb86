from fedbip_cli.cli.app import main

main()
