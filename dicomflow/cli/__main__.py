from dicomflow.cli.main import main

main()
